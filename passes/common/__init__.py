"""Helpers shared by several passes (graph surgery, math). Not passes themselves."""
