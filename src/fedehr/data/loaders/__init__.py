"""Readers of ICU datasets as distributed (see fedehr.data.sources for the contract)."""
