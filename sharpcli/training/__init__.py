"""Training: the base optimizer and schedule, the SAM family, the settings and step plan,
the measurement of a run as it trains (the Tracker), resume, and the loop of `sharp train`."""
