"""Use cases and what they share: the request gate (readiness, the admission queue, the
deadline, the shutdown), conversation assembly, history fitting, the performance report."""
