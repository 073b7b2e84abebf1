"""The bundled default model: weights, GPT-2 tokenizer ranks, and the scripts that trained and sampled it."""
