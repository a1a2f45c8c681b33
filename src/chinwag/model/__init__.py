"""chinwag.model"""
