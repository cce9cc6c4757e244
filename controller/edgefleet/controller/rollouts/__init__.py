"""Staged, health-gated rollouts (DESIGN.md section 5), all in one package.

The pure core decides: ``strategy`` parses and validates what an operator asks for; ``engine``
is the state machine that decides, from the rollout, the fleet's reports and the clock, what to
send next, and takes every operator decision (pause, resume, abort, stop waiting, fleet
rollback), each as a new rollout or a ``Refusal``; ``history`` and ``explaining`` say what
happened and why; ``codec`` is the strategy as JSON. None of them imports the shell
(import-linter holds it).

The shell beside it acts: ``deployer`` checks a deploy's preconditions, ``shell`` runs each
decision under one lock (load, decide, seal, persist, publish), ``store`` and ``rows`` keep
rollouts in SQL, ``sender`` seals and publishes desired states, and ``driver`` is the thread
that steps every unfinished rollout.
"""
