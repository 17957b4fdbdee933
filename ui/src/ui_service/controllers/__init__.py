"""The admin UI's pages, one litestar Controller per area."""

from ui_service.controllers.api_keys import ApiKeysController
from ui_service.controllers.auth import AuthController
from ui_service.controllers.dashboard import DashboardController
from ui_service.controllers.generate import GenerateController
from ui_service.controllers.instances import InstancesController
from ui_service.controllers.maintenance import MaintenanceController
from ui_service.controllers.prompt import PromptController
from ui_service.controllers.render_types import RenderTypesController
from ui_service.controllers.services import ServicesController
from ui_service.controllers.statistics import StatisticsController
from ui_service.controllers.styles import StylesController

CONTROLLERS = [
    AuthController,
    DashboardController,
    InstancesController,
    RenderTypesController,
    StylesController,
    PromptController,
    GenerateController,
    StatisticsController,
    MaintenanceController,
    ApiKeysController,
    ServicesController,
]
