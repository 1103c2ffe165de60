"""Polya: Pólya-heuristic self-generation, filtering, mid-training, GRPO and evaluation, on Ray and Kubernetes."""
__version__ = "0.1.0"
