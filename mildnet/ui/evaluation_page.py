"""Evaluation page (placeholder while being written)."""
import streamlit as st
def render(ctx):
    st.title("Evaluation")
