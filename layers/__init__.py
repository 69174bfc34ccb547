"""Layers written once against ``core.functional``; names follow WeNet so checkpoint keys map 1:1."""
