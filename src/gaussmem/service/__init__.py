"""The recognizer over HTTP: `gaussmem serve` (FastAPI + uvicorn, the `serve` extra).

`served_gallery` owns a gallery and serialises its writes, `app` maps HTTP onto it and
serves the page (`page.html`). Nothing here is imported by `import gaussmem`.
"""
