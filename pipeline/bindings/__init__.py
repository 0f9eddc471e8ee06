"""Bindings to native libraries (llama.cpp through llama-cpp-python), below the runtimes and the build that use them."""
