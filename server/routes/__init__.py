"""HTTP routes: TGI generation, OpenAI completions, and the service routes."""
