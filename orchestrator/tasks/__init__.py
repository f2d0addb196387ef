"""Example tasks shipped with the package: data loaders and model functions to sweep."""
