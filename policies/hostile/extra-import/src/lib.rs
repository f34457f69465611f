//! Imports `hostile:extra/net`, which cairn does not provide: loading must fail, naming it.

wit_bindgen::generate!({ path: ["../../../wit", "wit"], world: "hostile:extra/evil", generate_all });

struct Evil;

impl Guest for Evil {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn should_save(_event: Event) -> bool {
        hostile::extra::net::connect("example.com:80")
    }
}

export!(Evil);
