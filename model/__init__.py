"""The model runtime: GPT math, KV cache, loaders, tokenizer, sampling and the engine. Knows nothing of HTTP."""
