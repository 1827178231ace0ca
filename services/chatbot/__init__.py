"""ChatBot AI chat services: office and character personas on llama.cpp."""

__version__ = "2.0.0.dev0"
