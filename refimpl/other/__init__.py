"""3.8 Others: techniques the survey files apart from the seven families (QDrop)."""
