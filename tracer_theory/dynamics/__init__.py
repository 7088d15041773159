"""Teacher dynamics shared by the linear theory and deep experiments: schedules and updates."""
