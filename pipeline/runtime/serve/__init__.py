"""What runtime `openai` needs to measure a server: launch and health (`server`), load generation (`load`), the
speed harness's adapter for a server (`speed`), and lm-eval's completions model with the guards MMLU needs (`lm`,
imported lazily: lm_eval)."""
