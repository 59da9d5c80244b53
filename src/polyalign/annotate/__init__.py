"""Blind human evaluation: the rating database (`store`), drawing a rating set from the evaluation reports
(`build`) and exporting the ratings with their figures (`export`)."""
