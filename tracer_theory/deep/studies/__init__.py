"""The studies: the forgetting experiment (protocols, data arrays, evaluation, geometry,
hyperparameter selection) and the linear theory against the measured forgetting."""
