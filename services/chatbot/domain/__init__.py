"""Domain: request schemas, personas and errors. Imports nothing of the project."""
