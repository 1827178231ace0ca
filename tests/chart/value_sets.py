"""Value sets the chart is rendered with (tests/chart) and dry-run against the API server
(tests/cluster/test_cluster_chart.py)."""

FULL = {  # everything optional switched on
    "operator": {"watchNamespaces": ["team-a", "team-b"], "hfEndpoint": "https://hf-mirror.example",
                 "gpuProfiles": {"a100": {"nodeSelector": {
                     "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "gpus": 1}},
                 "podDisruptionBudget": {"enabled": True}},
    "mongodb": {"podDisruptionBudget": {"enabled": True},
                "persistence": {"deleteOnUninstall": True, "storageClassName": "fast"}},
    "openai": {"apiKey": "sk-test"},
    "chatbotModel": {"create": True, "name": "chatbot",
                     "spec": {"office": {"gpuProfile": "a100"}}},
    "commonLabels": {"team": "ml"},
}
EXTERNAL = {"mongodb": {"enabled": False},
            "externalMongo": {"url": "mongodb+srv://u:p@cluster0.example.net/"},
            "serviceImage": {"variant": "cpu"}, "networkPolicy": {"enabled": False},
            "tests": {"enabled": False}}
VALUE_SETS = {"defaults": {}, "full": FULL, "external-mongo": EXTERNAL}
