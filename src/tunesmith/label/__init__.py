"""Collecting human preferences on a local web page (`tunesmith label`)."""
