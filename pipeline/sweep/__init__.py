"""The sweep: one driver (`driver.run_sweep`: start, resume, failure isolation, interrupt, finish) and the
executors that run its children (`executors`: inline, process - the default -, ray); a child runs the same
code (`child.execute_child`) in any of them."""
