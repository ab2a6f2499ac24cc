"""Reusable layers: straight-through binary masks and masked linear layers (`masks`)."""
