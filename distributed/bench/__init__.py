"""Throughput and communication measurements (``launch.benchmark``): ``run`` runs them,
``report`` formats them."""
