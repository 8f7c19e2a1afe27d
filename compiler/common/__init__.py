"""What every stage may use and none owns: installed datasets, the refusal judge and its sentence encoder,
and model loading. Nothing here imports a stage."""
