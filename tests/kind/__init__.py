"""kind on this machine: its engine (a dockerd with the capability-fitting runtime), its node
image assembled from local parts, and the README's kind quickstart as a test."""
