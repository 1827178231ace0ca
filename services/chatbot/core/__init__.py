"""Use cases: admission, conversation assembly, history replay, performance stats."""
