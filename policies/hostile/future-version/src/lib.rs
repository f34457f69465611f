//! A save-interval policy built against a future `cairn:policy@0.2.0`: cairn 0.1 must say so.

wit_bindgen::generate!({ path: "wit", world: "cairn:policy/save-interval@0.2.0" });

struct Future;

impl Guest for Future {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn should_save(_state: TrainingState, _event: Event) -> bool {
        cairn::policy::host::describe_run().rank == 0
    }
}

export!(Future);
