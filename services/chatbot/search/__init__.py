"""Web search adapters (the `WebSearch` port of `chatbot.core.ports`)."""
