"""What a process runs on: the device, the precision `auto` picks there, and how freed memory is
returned. Below everything that loads or runs a model."""
