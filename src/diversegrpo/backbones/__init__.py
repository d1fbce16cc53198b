"""Backbone adapters (DESIGN §5): toy, sd3, flux behind one interface (`base.Backbone`)."""
