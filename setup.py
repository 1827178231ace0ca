"""The commands of the packages that are here (the rest of the project's metadata is in
pyproject.toml, which declares `scripts` dynamic).

An image copies only its own packages before `pip install .`, so it installs only their
commands: the service images `chatbot`, the operator image none (it runs kopf and
`python -m chatbot_operator.fetch`). A checkout has every package, so every command.
"""

from pathlib import Path

from setuptools import setup

SERVICES = Path(__file__).resolve().parent / "services"
# package -> its command
COMMANDS = {
    "chatbot": "chatbot = chatbot.cli:main",
    # the load-test client, also run as `chatbot loadtest`
    "chatbot_loadtest": "chatbot-loadtest = chatbot_loadtest.command:main",
    # development tooling: the tiny test model
    "chatbot_dev": "chatbot-dev = chatbot_dev.cli:main",
}

if __name__ == "__main__":  # as setuptools runs it; tests/images imports COMMANDS
    setup(entry_points={"console_scripts": [command for package, command in COMMANDS.items()
                                            if (SERVICES / package).is_dir()]})
