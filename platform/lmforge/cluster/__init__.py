"""Where stages run: connecting to a Ray cluster, or starting and stopping a local one."""
