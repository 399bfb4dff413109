"""The pages of the Streamlit app (``workbench/app.py``) and the helpers they share (``common``)."""
