"""Engines implementing `chatbot.core.ports.ChatEngine`: llama.cpp (and later OpenAI)."""
