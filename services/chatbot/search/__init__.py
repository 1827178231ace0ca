"""Search adapters (the `WebSearch` port of `chatbot.core.ports`): DuckDuckGo through ddgs
(`ddgs_search`), and recorded results for deployments without internet (`recorded`)."""
