"""Parcels: the example project of the dashboard's docs and screenshots."""
