"""Federated methods as framework-free server workflows and site handlers (Flower drives them)."""
