use llmjobs::llm_job;

#[llm_job]
async fn notify(user: String) {
    println!("{user}");
}

fn main() {}
