"""The HTTP face of gptserve: app, schemas, routes, metrics, settings and the command line."""
