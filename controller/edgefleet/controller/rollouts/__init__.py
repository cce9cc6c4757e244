"""Staged, health-gated rollouts (DESIGN.md section 5).

``strategy`` parses and validates what an operator asks for; ``engine`` is the pure state
machine that decides, from the rollout, the fleet's reports and the clock, what to send next.
"""
