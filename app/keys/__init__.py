"""API keys: who may call, in which project (the HTTP layer authenticates with `app.storage.keys`)."""
