"""What the host knows of recipes: the built-in ones and those an admin declares.

- `model.py`: recipes.toml's shape as pydantic models, and its JSON Schema;
- `rules.py`: the checks of each value those models run, and what they say;
- `loader.py`: reads the file and reports each problem at its line (`lines.py` finds it);
- `workdir.py`: which host folder a declared recipe may mount;
- `catalog.py`: every recipe a run can name, the declared ones re-read when the file changes;
- `run_params.py`: the parameters every run has;
- `check.py`: `assistant recipes check` and `assistant recipes schema`.

What runs inside a run (the built-in recipes' code, a declared recipe's `DeclaredRecipe`
and its templates) is in `assistant/jobs/`, which the run image carries.
"""
