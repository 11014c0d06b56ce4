"""Example landscapes that ship with Loglane; `loglane demo` runs `shop`."""
