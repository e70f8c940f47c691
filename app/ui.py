"""The browser workbench (Gradio). ``app/`` only calls services of db/, mnc_core/ and partial_sup/."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from db import queries  # noqa: E402
from db.engine import Database  # noqa: E402

CATEGORY_HEADERS = ["id", "name", "boxes", "masks", "supervision"]
IMAGE_HEADERS = ["id", "file_name", "width", "height", "split", "annotations"]


def _overview(db: Database):
    summary = queries.summary(db)
    text = (f"**{summary.images} images** ({summary.train_images} train, {summary.val_images} val) · "
            f"**{summary.annotations} annotations** accepted, {summary.proposed} proposed · "
            f"**{len(summary.categories)} categories** · active model: {summary.active_model or 'none yet'}")
    categories = [[c.id, c.name, c.boxes, c.masks, c.supervision] for c in summary.categories]
    images = [[row[h] for h in IMAGE_HEADERS] for row in queries.list_images(db)]
    return text, categories, images


def build_app(db: Database) -> gr.Blocks:
    with gr.Blocks(title="Instance segmentation workbench") as demo:
        gr.Markdown("# Instance segmentation workbench")
        overview = gr.Markdown(elem_id="overview")
        refresh = gr.Button("Refresh", size="sm")
        with gr.Tab("Categories"):
            categories = gr.Dataframe(headers=CATEGORY_HEADERS, interactive=False, elem_id="categories")
        with gr.Tab("Images"):
            images = gr.Dataframe(headers=IMAGE_HEADERS, interactive=False, elem_id="images")
        outputs = [overview, categories, images]
        demo.load(lambda: _overview(db), outputs=outputs, api_name="overview")
        refresh.click(lambda: _overview(db), outputs=outputs, api_visibility="private")
    return demo


def serve(db: Database, host: str = "127.0.0.1", port: int = 7860) -> None:
    print(f"workbench on http://{host}:{port} (data in {db.data_dir})")
    build_app(db).queue().launch(server_name=host, server_port=port, share=False, inbrowser=False)
