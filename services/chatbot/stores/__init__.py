"""History store adapters (the `HistoryStore` port of `chatbot.core.ports`)."""
