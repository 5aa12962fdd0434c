"""The pattern language's grammar (``pattern.lark``), shipped as package data."""
