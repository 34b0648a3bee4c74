"""A human co-writing study (the paper's user study, Fig. 7) on this project's systems.

    python -m collab_utils study params/quickstart.yaml --port 8000   # the participant page
    python -m collab_utils study simulate 30 params/quickstart.yaml   # simulated participants
    python -m collab_utils study export params/quickstart.yaml        # parquet for notebook 07

A participant consents, gets a writing task, chats with one blinded system (base,
proactive-prompted base or a trained adapter, assigned at random and balanced), rates every
reply and the final document from 1 to 10, and gets a completion code. Every event is in SQLite
at once. Modules: `store` (SQLite, assignment), `systems` (who replies), `batching` (requests
of many participants in one batch), `app` (the web app), `server` (assembly, uvicorn),
`participants` (simulated participants), `analysis` (Fig. 7 statistics), `cli`.
"""
