"""Scale-out mode: stateless API nodes and GPU workers on shared infrastructure.

    API node  (`stepedit serve --queue redis://... --db postgresql://...`): accepts jobs, commits
              them to PostgreSQL, sends one Celery task per job to the queue of its model version,
              sweeps for lost dispatches, dead workers and undelivered webhooks. No model, no torch.
    worker    (`stepedit worker --queue ... --db ... --model ...`): one per GPU; loads the model
              once and runs one Celery task (one job) at a time, acking only when the job is done.

PostgreSQL holds every job; the broker only carries "run job <id>" messages, so a lost message is
recovered from the database and a duplicate one is harmless: every claim and every terminal
transition is a conditional update on the job's attempt number.
"""
