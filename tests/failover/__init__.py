"""Neighbour failover: the pure choice, the neighbour table, and a real fleet of agents."""
