"""RL math shared by several algorithms: returns and advantages (`returns`), observation and return
normalisation (`normalize`), replay buffers (`replay`)."""
